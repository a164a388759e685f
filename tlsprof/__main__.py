from tlsprof.cli import main

raise SystemExit(main())
