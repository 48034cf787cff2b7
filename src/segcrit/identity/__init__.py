"""segcrit.identity"""
