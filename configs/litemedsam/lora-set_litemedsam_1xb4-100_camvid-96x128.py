# LiteMedSAM + LoRA (r=3) on CamVid with the Mask2Former-style set head (22 queries sharing
# SAM's first hypernetwork MLP, a Linear(256, 12) classifier, Hungarian-matched MaskSetLoss),
# on the per-class run's data, crops and 100-iteration schedule.
_base_ = ['./lora-perclass_litemedsam_1xb4-100_camvid-96x128.py']
model = dict(
    decode_head=dict(
        type='SAMMaskSetHead',
        mode='set',
        # Queries of 30x the std of SAM's first mask token (the default): at 1.0 LiteMedSAM's
        # decoder averages them into one query and the head predicts one class everywhere;
        # see docs/datasets.md, "CamVid with LiteMedSAM".
        token_noise=30.0,
        set_loss=dict(type='MaskSetLoss'),  # Mask2Former's 2/5/5 weights, full 1/4 grid
        loss_decode=dict(_delete_=True, type='CrossEntropyLoss', loss_weight=1.0)))  # unused
