from riftune.cli import main

raise SystemExit(main())
