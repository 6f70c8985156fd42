from fastmoco.cli.train import main

raise SystemExit(main())
