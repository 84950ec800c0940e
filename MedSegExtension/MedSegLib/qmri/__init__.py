"""Quantitative MRI: vectorised T1 (IR, VFA, Look-Locker/MOLLI), T2 (mono-exponential, EPG) and T2* fitting.

``models`` holds the signal equations, ``engine`` the variable-projection solver (grid matmul + exact refinement,
with the compiled whole-volume kernel in ``_kernels``), ``fitting`` the array-level fits with quality and status
maps, ``acquisition`` the protocol values from DICOM / sequence nodes, ``pipeline`` the CLI and MRML entry points,
``phantom`` sphere ROIs of a relaxometry phantom from template centres.
"""
