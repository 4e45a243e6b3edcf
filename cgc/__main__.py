"""`python -m cgc` is the `cgc` command (what `torchrun -m cgc train ...` runs)."""

from cgc.cli import main

if __name__ == "__main__":
    main(prog_name="cgc")
