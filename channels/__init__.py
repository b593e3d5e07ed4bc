"""Rasa input/output channels, the tracker store, and fixes to Rasa's server (channels/rasa_fixes.py).

Everything here runs inside `rasa run`; importing the package applies the fixes.
"""

from channels import rasa_fixes

rasa_fixes.apply()
