from surgeon.cli import main

raise SystemExit(main())
