"""GPT code in the styles people copy, for tests, benchmarks and `cgc MODEL.py` examples.

Each file is a model written the way its original is (nanoGPT, minGPT), with `get_model()`
returning (module, example_inputs) so the CLI takes it as MODEL.
"""
