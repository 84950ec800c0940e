"""Logic self-tests shared by pytest (headless) and the modules' ``Test`` classes inside 3D Slicer.

Each ``check_*`` function takes the scene to work in and a scratch folder, and raises
``AssertionError`` with a useful message when something is wrong.
"""
