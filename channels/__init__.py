"""Rasa input/output channels, the tracker store, and fixes to Rasa's server (channels/rasa_fixes.py).

Everything here runs inside `rasa run`; importing the package applies the fixes.
"""

from bot.observability import install_masking
from channels import rasa_fixes

rasa_fixes.apply()
install_masking()  # no phone number or openid in any log line of the Rasa process
