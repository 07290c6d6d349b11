"""Triggers: wait on native generation tasks in the triggerer."""
