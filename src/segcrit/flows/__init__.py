"""segcrit.flows"""
