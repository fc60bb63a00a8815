from .nas_stage_hook import NASStageHook

__all__ = ['NASStageHook']
