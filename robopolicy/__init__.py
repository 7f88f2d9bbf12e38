"""robopolicy: robot visuomotor policies trained on demo stores, evaluated in MuJoCo, served in real time."""
__version__ = "0.1.0"
