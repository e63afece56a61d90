from onnxforge.cli.app import main

raise SystemExit(main())
