"""Quantitative MRI: vectorised T1 (IR, VFA, Look-Locker/MOLLI), T2 (mono-exponential, EPG) and T2* fitting.

``engine`` holds the variable-projection solver, ``models`` the signal equations, ``fitting`` the array-level fits
with quality maps, ``acquisition`` reading protocol values from DICOM / sequence nodes, ``nodes`` the MRML glue.
"""
