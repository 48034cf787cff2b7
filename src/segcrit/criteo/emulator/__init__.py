"""segcrit.criteo.emulator"""
