"""Data and models for demos and benchmarks: the Standard CL and SuperNI preparation, the embedded
SmolLM2 model, and the tiny Llama the tests build."""
