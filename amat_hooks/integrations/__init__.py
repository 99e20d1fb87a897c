"""Adapters: one per trainer. Each only says how its batches, ids and loss terms look."""
