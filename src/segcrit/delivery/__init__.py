"""segcrit.delivery"""
