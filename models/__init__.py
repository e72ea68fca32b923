"""Model-side code with no Django in it: the model registry, the serving client and vLLM
process management, the tiny test model and the synthetic world.

Importing this package loads neither Django nor torch; submodules that need torch import it
themselves, when used.
"""
