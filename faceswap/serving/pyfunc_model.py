"""The pyfunc model as MLflow's models-from-code: `register` logs this file as `python_model`, and MLflow
runs it at load time (after putting the logged project code on sys.path) instead of unpickling an object.

Never imported by the project: importing it sets MLflow's process-wide "model being logged".
"""
import mlflow.models

from faceswap.serving.pyfunc import FaceSwapModel

mlflow.models.set_model(FaceSwapModel())
