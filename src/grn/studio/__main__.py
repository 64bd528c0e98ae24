"""``python -m grn.studio ckpt=<generator.ckpt> [tokenizer_ckpt=...] [port=7860]``: grn.entrypoints.studio."""

from grn.entrypoints.studio import main

if __name__ == "__main__":
    main()
