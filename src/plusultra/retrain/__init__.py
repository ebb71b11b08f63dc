"""One-command retraining with champion/challenger promotion (`plusultra-retrain`).

validate -> train -> backtest -> compare -> promote -> report, each step a function of a
workdir whose state file (`state.py`) records what is done, so a rerun resumes after the last
completed step and an orchestrator can run the steps one by one (docs/operations.md).
"""
