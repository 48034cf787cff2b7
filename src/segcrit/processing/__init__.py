"""The processing step: accepted events -> identity -> consent -> flows -> desired targets.

`engine` (the Processor: chunks of the inbox, one unit of work each), and the steps it runs per
event inside that unit of work: `profile_flows` (traits, suppression, lifecycle) and `commerce`
(conversions, product signals, catalog). The decisions are the flows' (segcrit.flows), pure.
"""
