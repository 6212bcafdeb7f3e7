from sam_core.cli import main

raise SystemExit(main())
