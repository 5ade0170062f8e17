"""Evaluation: runners (plan, baseline, peers), paired timing, scoring, the quality gate, peers, metrics.

Functions of a sampler and samples; the commands read and write the run directories around them.
"""
