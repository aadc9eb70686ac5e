from robustfer.cli import main

raise SystemExit(main())
