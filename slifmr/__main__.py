from slifmr.cli import main

raise SystemExit(main())
