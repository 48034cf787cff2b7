"""segcrit.criteo"""
