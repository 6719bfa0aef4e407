from arrakis.cli import main

raise SystemExit(main())
