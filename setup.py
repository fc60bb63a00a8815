"""mmseg-naslora: parameter-efficient fine-tuning of SAM for mmsegmentation.

``pip install -e .`` declares the pure-Python dependencies. mmcv 2.1.0 with
compiled ops must match the installed torch, so ``tools/setup_env.sh`` installs
it (from a matching prebuilt wheel or from source) before this package.
"""
import os.path as osp

from setuptools import find_packages, setup


def read_requirements(name: str) -> list:
    path = osp.join(osp.dirname(__file__), 'requirements', name)
    with open(path) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith('#')]


setup(
    name='mmseg-naslora',
    version='0.1.0',
    description='LoRA, Conv-LoRA and NAS-LoRA fine-tuning of SAM for mmsegmentation',
    long_description=open(osp.join(osp.dirname(__file__), 'README.md')).read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mmseg_naslora', 'mmseg_naslora.*']),
    python_requires='>=3.9',
    install_requires=(['torch>=2.0', 'torchvision', 'mmcv==2.1.0'] + read_requirements('runtime.txt') +
                      read_requirements('nodeps.txt')),
    extras_require=dict(tests=read_requirements('tests.txt')),
    license='Apache-2.0',
)
