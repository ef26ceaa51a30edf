from medsight.cli.main import main

raise SystemExit(main())
