from genctl.cli import main

raise SystemExit(main())
