"""segcrit.store"""
