from .nas_optim_wrapper_constructor import NASOptimWrapperConstructor

__all__ = ['NASOptimWrapperConstructor']
