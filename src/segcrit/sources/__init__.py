"""segcrit.sources"""
