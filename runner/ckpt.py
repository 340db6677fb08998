"""``python -m runner.ckpt list|verify|export …``: the checkpoint companion CLI."""

from runner.checkpoint.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
