from .auc_metric import AUCMetric
from .ber_metric import BERMetric
from .foreground_iou_metric import ForegroundIoUMetric
from .sod_metric import SODMetric

__all__ = ['AUCMetric', 'BERMetric', 'ForegroundIoUMetric', 'SODMetric']
