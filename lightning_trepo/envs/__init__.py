"""Text environments for multi-turn episodes: the interface, tools, and adapters for existing environments."""
from lightning_trepo.envs.adapters import GymTextEnv
from lightning_trepo.envs.base import EnvError, Environment, StepResult, check_step_result, env_reward
from lightning_trepo.envs.tools import Calculator, FunctionTool, PythonTool, Tool, ToolEnv

__all__ = ["Calculator", "EnvError", "Environment", "FunctionTool", "GymTextEnv", "PythonTool", "StepResult", "Tool",
           "ToolEnv", "check_step_result", "env_reward"]
