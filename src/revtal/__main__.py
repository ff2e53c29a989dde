from revtal.cli import main

raise SystemExit(main())
