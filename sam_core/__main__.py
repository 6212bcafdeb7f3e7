from sam_core.cli import main
from sam_core.runtime import keep_freed_memory

keep_freed_memory()  # a process of its own: keep the encoder's big buffers instead of refaulting them
raise SystemExit(main())
