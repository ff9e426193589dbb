from xbarlab.cli import main

raise SystemExit(main())
