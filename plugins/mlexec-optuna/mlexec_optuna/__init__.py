"""mlexec-optuna: ``mlexec sweep --strategy optuna``."""
