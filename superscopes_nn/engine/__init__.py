"""Patching: prompts to rows (resolver), one nnsight session per chunk (session), the orchestrator (run), the remote plan, the public calls (api) and the logit lens."""
