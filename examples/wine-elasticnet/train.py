"""ElasticNet on the wine data that ships inside scikit-learn (no downloads).

Predicts a wine's alcohol content from its twelve other chemical measurements
and logs the fit to the MLflow run that `mlexec run` (or `mlflow run`) opened.
"""

import argparse
import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np
from sklearn.datasets import load_wine
from sklearn.linear_model import ElasticNet
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--l1-ratio", type=float, default=0.1)
    parser.add_argument("--test-size", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    data = load_wine(as_frame=True).frame.drop(columns="target")
    X, y = data.drop(columns="alcohol"), data["alcohol"]
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=args.test_size, random_state=args.seed)

    model = make_pipeline(StandardScaler(), ElasticNet(alpha=args.alpha, l1_ratio=args.l1_ratio,
                                                       random_state=args.seed))
    model.fit(X_train, y_train)
    predicted = model.predict(X_test)
    metrics = {
        "rmse": float(np.sqrt(mean_squared_error(y_test, predicted))),
        "mae": float(mean_absolute_error(y_test, predicted)),
        "r2": float(r2_score(y_test, predicted)),
    }
    print(f"ElasticNet(alpha={args.alpha}, l1_ratio={args.l1_ratio}): " +
          ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))

    with mlflow.start_run():  # attaches to the run mlexec created (MLFLOW_RUN_ID)
        mlflow.log_metrics(metrics)
        coefficients = dict(zip(X.columns, model[-1].coef_.round(5).tolist()))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, "coefficients.json")
            path.write_text(json.dumps(coefficients, indent=2))
            mlflow.log_artifact(str(path))


if __name__ == "__main__":
    main()
