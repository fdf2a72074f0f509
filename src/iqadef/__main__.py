from iqadef.cli import main

raise SystemExit(main())
