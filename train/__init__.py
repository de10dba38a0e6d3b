"""Training of IQ-LUT models with torch (installed as ``iqlut_gpu.train``).

torch is an optional extra (``pip install iqlut-gpu[train]``) and is imported only here.
"""
