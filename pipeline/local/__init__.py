"""Local tooling, apart from the product: the CleverTap emulator, the demo, benchmarks, the sample event
generator, an embedded redis-server and the process runner behind ``run``, ``demo`` and the end-to-end
tests. This package imports the product (``pipeline``); the product never imports it."""
