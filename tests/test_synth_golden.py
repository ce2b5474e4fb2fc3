"""FOMO-Synth golden output: a small fixed set must come out bit-identical for its seed.

Why: the synthetic data is the benchmark's ground truth, and its docstring promises that the
output depends on the seed only. A refactor of `fomo_nnunet.data.synth` (moving code, splitting
functions, reading per-task choices from the task table) must not change a single voxel: every
random draw has to happen in the same order as before. This test pins the output of one small
set: every task (3 train cases, so every class of every task appears, and 1 test case) and a
pretraining corpus of 2 sources x 3 subjects (seed 18 gives a stroke, a tumor and a meningioma
subject among them).

What is hashed (sha256): for each NIfTI its dtype, shape, affine and voxel bytes (not the gzip
file, whose bytes depend on the zlib build); label.txt and the TSV files byte for byte; synth.json
without its timing, its floats to 9 significant digits. Only this platform's numbers are pinned:
another numpy/scipy build may round differently.

Regenerate, only when a change of the output is intended (say why in the commit message):
    .venv/bin/python tests/test_synth_golden.py > /tmp/golden.txt
and paste the printed dict over EXPECTED below.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

SETTINGS = dict(preset="tiny", seed=18, num_processes=2, n_train=3, n_test=1, n_pretrain_sources=2,
                n_pretrain_subjects=3, previews=False, progress=False)


def _digest(path: Path) -> str:
    if path.name.endswith(".nii.gz"):
        import nibabel as nib

        img = nib.load(str(path))
        data = np.ascontiguousarray(np.asarray(img.dataobj))
        h = hashlib.sha256(f"{data.dtype.str} {data.shape}".encode())
        h.update(np.asarray(img.affine, np.float64).tobytes())
        h.update(data.tobytes())
        return h.hexdigest()
    if path.name == "synth.json":
        summary = json.loads(path.read_text(), parse_float=_nine_digits)
        summary.pop("seconds", None)
        return hashlib.sha256(json.dumps(summary, sort_keys=True).encode()).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _nine_digits(text: str) -> float:
    """A float of the summary to 9 significant digits. Its acquisition parameters are float64 results
    of exp/log on random draws, printed in full; on a new machine (November 2026) the summary's hash
    changed while every voxel of every file stayed identical, most likely in those last digits.
    Rounded, the pin is on the values that shape the data, not on a last bit."""
    return float(f"{float(text):.9g}")


def golden_digests(out: Path) -> dict[str, str]:
    from fomo_nnunet.data.synth import generate

    generate(out, **SETTINGS)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    return {p.relative_to(out).as_posix(): _digest(p) for p in files}


EXPECTED: dict[str, str] = {
    "finetune/task1/test/labels/sub_1/ses_1/label.txt":
        "4355a46b19d348dc2f57c046f8ef63d4538ebb936000f3c9ee954a27460dd865",
    "finetune/task1/test/labels/sub_1/ses_1/seg.nii.gz":
        "4013e975991aa02dfc8c24d64736311c417ace7b8a98c7235e061cd997475d49",
    "finetune/task1/test/participants.tsv":
        "f79ed05d43ed486d74cd01979baf99ec8b5a00d6df04ab3997c9e1a4e71bf15d",
    "finetune/task1/test/preprocessed/sub_1/ses_1/adc.nii.gz":
        "bc0794d06b53359052a5b039e61378eb875e237f98e40bf6a2a785730f887833",
    "finetune/task1/test/preprocessed/sub_1/ses_1/dwi_b1000.nii.gz":
        "69aff0fc33d869ec29a329f9883dd270a5fd2f44e520e0e3f779fa562ccc4d51",
    "finetune/task1/test/preprocessed/sub_1/ses_1/flair.nii.gz":
        "fa36a37ed09b283e5c6fbe248045e1109d602aaf9e588255b08c73047ea3b255",
    "finetune/task1/test/preprocessed/sub_1/ses_1/t2s.nii.gz":
        "c21608d582f4be680be5d493500550a8f38454cdf32ce3cfd6e330fc6df9db22",
    "finetune/task1/train/labels/sub_1/ses_1/label.txt":
        "4355a46b19d348dc2f57c046f8ef63d4538ebb936000f3c9ee954a27460dd865",
    "finetune/task1/train/labels/sub_1/ses_1/seg.nii.gz":
        "029395e19b9fc9518cbe73b52c49841087c037c54952752d751114ca0541e273",
    "finetune/task1/train/labels/sub_2/ses_1/label.txt":
        "4355a46b19d348dc2f57c046f8ef63d4538ebb936000f3c9ee954a27460dd865",
    "finetune/task1/train/labels/sub_2/ses_1/seg.nii.gz":
        "b4f53a1287f697f074f45950363a2424e3de0e24944ee94f7a2b8a04fe4a428b",
    "finetune/task1/train/labels/sub_3/ses_1/label.txt":
        "9a271f2a916b0b6ee6cecb2426f0b3206ef074578be55d9bc94f6f3fe3ab86aa",
    "finetune/task1/train/labels/sub_3/ses_1/seg.nii.gz":
        "b41639347d32bbefca9b373488af75ae3786ea5acfa08bf3dea6d987f5ed9ef9",
    "finetune/task1/train/participants.tsv":
        "c2197a248d4d9005b78188ba7ff9620b03a5ab26b5326c39054aa1f8efcef271",
    "finetune/task1/train/preprocessed/sub_1/ses_1/adc.nii.gz":
        "2907c0b86f354aa9fe795752538a8c788350312c1310da5a22282fd5ab80ca0f",
    "finetune/task1/train/preprocessed/sub_1/ses_1/dwi_b1000.nii.gz":
        "427406f93612555c29d231a2376ddf7c2d7e601443c40b81477c6071271bc080",
    "finetune/task1/train/preprocessed/sub_1/ses_1/flair.nii.gz":
        "721e5490234431653041fb067bc389e73d4b79bc3b04d4e48548169dd58ed3b4",
    "finetune/task1/train/preprocessed/sub_1/ses_1/swi.nii.gz":
        "a685834030d1322b7a4ba0de02afa31b738a9bf3a2e6662f174d29c7c897f8a5",
    "finetune/task1/train/preprocessed/sub_2/ses_1/adc.nii.gz":
        "d883250854a4e07eca14a9ba7312cb013742c9329db9b5a3579003beb96fa4a9",
    "finetune/task1/train/preprocessed/sub_2/ses_1/dwi_b1000.nii.gz":
        "ea53cb7455fb919d5811d01768890753a364b3515aa0099037d95601e03007e2",
    "finetune/task1/train/preprocessed/sub_2/ses_1/flair.nii.gz":
        "b0e622dc8d51499b067d7106dd5275392d58ca7e55e1e954733cd12aa30b64fb",
    "finetune/task1/train/preprocessed/sub_2/ses_1/swi.nii.gz":
        "c3cfd868e8cfb0034494a4e0f79e68ad279f84fce4bb9d30423f0619a74c80fb",
    "finetune/task1/train/preprocessed/sub_3/ses_1/adc.nii.gz":
        "58dd2257c6db29a0471729275ed9d72a550438b7359f4019dde992735d8f924a",
    "finetune/task1/train/preprocessed/sub_3/ses_1/dwi_b1000.nii.gz":
        "51becc1f5c3bbe373349357e911781f84087a883440b3ff607a3e681dde39400",
    "finetune/task1/train/preprocessed/sub_3/ses_1/flair.nii.gz":
        "73677d2bddaf79675fae59b635a2cea2fab2e467483ea094c9cca291d5e83d5c",
    "finetune/task1/train/preprocessed/sub_3/ses_1/t2s.nii.gz":
        "2478c289e91aa5fab545903babff866d68432747a03c90ca6125f17f25e43316",
    "finetune/task2/test/labels/sub_1/ses_1/seg.nii.gz":
        "9ce619bf7e141b6903337fc4e4322584f0fa230d38fb4d13e514d86c296707cd",
    "finetune/task2/test/participants.tsv":
        "f9547bd28232d93719e5312014a4a5f4ab00b351b8a8c3dc410c4ff63a17d0b8",
    "finetune/task2/test/preprocessed/sub_1/ses_1/dwi_b1000.nii.gz":
        "f80fe0899db1045c5457f321e04ba06e9a63abdfab3208d96d9db33baa6add18",
    "finetune/task2/test/preprocessed/sub_1/ses_1/flair.nii.gz":
        "ae92c5bd9a741eb2ef466b564cdfc6dc114c500c25db61799506fe30593bc72a",
    "finetune/task2/test/preprocessed/sub_1/ses_1/swi.nii.gz":
        "281eb499942cdcda478d076435ee44ef3d00ba44b43d1712de007e0c3cf0f582",
    "finetune/task2/train/labels/sub_1/ses_1/seg.nii.gz":
        "adf6b66685fc6230654a4bb951ad31c07c7d2e01e7da19348012a082003d1c7e",
    "finetune/task2/train/labels/sub_2/ses_1/seg.nii.gz":
        "e3231e8a009daf39ae96c65098326cd9c3795f8d936e52f8ad07ddbde7ca1f74",
    "finetune/task2/train/labels/sub_3/ses_1/seg.nii.gz":
        "a24863cc0952cbfa30f51864145d24d4a6f14f13a55b5e86d0c771b38f526476",
    "finetune/task2/train/participants.tsv":
        "3471a7fb27d2b55552c7bf6174688b2e20013e1ca64c8ebd6980af0d7ed9a270",
    "finetune/task2/train/preprocessed/sub_1/ses_1/dwi_b1000.nii.gz":
        "9a1e5702e18cd1fc7ed8ef5774d446b83cc3eeef0b51577dd14e94a2a72acd77",
    "finetune/task2/train/preprocessed/sub_1/ses_1/flair.nii.gz":
        "7d897f571ac2bb05c084c68052287f445b23039f40ff703ceb3e8cda713b2a21",
    "finetune/task2/train/preprocessed/sub_1/ses_1/swi.nii.gz":
        "e5d2032f2469476730c93c160cf2199bd536818a43e74508de6f866176562a55",
    "finetune/task2/train/preprocessed/sub_2/ses_1/dwi_b1000.nii.gz":
        "4a5cd186be04b519fbf8b18280df37706388e8ad860d76948015c20c123470f0",
    "finetune/task2/train/preprocessed/sub_2/ses_1/flair.nii.gz":
        "59c036a03dd2c09f972d4753087d07e7e3f05148ebe2f6a7c438f7a24950ccd4",
    "finetune/task2/train/preprocessed/sub_2/ses_1/swi.nii.gz":
        "a68461411d5c51325d48fb90143a83e3d7fe3d64e2838ce624be958f7492d177",
    "finetune/task2/train/preprocessed/sub_3/ses_1/dwi_b1000.nii.gz":
        "d17a30fa804ea9e96aee97196548addba9443d3ff671c2f50bc684d4ef46ac9f",
    "finetune/task2/train/preprocessed/sub_3/ses_1/flair.nii.gz":
        "307151ce380ba9283429d96944245f40d86e6d99e671f79c5f2b1fb78a88b01b",
    "finetune/task2/train/preprocessed/sub_3/ses_1/t2s.nii.gz":
        "682fc6791a239f3922ffb4ed0bf9c8deabd0c4b35ae414d119315c1598fed939",
    "finetune/task3/test/labels/sub_1/ses_1/label.txt":
        "d4c3e374dfb3921019f06012c1530e9ff5a6bfe65cf145da0a3759acac4debea",
    "finetune/task3/test/participants.tsv":
        "017a3b6c64130f507e7e2dfca76b1e16f8a4629afdf114d92821c9ec3da5d199",
    "finetune/task3/test/preprocessed/sub_1/ses_1/t1.nii.gz":
        "0fdcc3aa1579de23bbb7c025ff0bc918b50e4b6b72a89cb20eb8c9a0d86c3cea",
    "finetune/task3/train/labels/sub_1/ses_1/label.txt":
        "13345371c1275e85f3e6d2f3987e9ddbd3db08116e095310400c4a53818bc16c",
    "finetune/task3/train/labels/sub_2/ses_1/label.txt":
        "625db1ec1fa160135d767f902dad283a46cda25914c8f88dc9ceafc5ecd8238a",
    "finetune/task3/train/labels/sub_3/ses_1/label.txt":
        "c5ad40a6577df9b967ba15111d85326f0511a9de4f060fa098c4bbab8d4577c4",
    "finetune/task3/train/participants.tsv":
        "543c998930144a4e01210c78befad4b1f52f3981e0c11436a61ecae797276857",
    "finetune/task3/train/preprocessed/sub_1/ses_1/t1.nii.gz":
        "f343d5b9d5f265150415e436f0b2ab57fbb258e853f339f01912fb860da8c05a",
    "finetune/task3/train/preprocessed/sub_2/ses_1/t1.nii.gz":
        "175abd140af314a7c51740ad1d25e96579da089a56f551031e39b75add4e4fa4",
    "finetune/task3/train/preprocessed/sub_3/ses_1/t1.nii.gz":
        "4a7edc80edd8e465eddf20400a7b25385763f37446308aefcc478faa5af9e6c9",
    "finetune/task4/test/labels/sub_1/ses_1/seg.nii.gz":
        "a31eddd865f8acd4fd8a5efeda2f8541c4a941b7202b006b0e63ce704a6af5cb",
    "finetune/task4/test/participants.tsv":
        "3f06613a2f1d563b9f402d4e938a0d992d10efb98caba5bec41bf1ad17ff70a0",
    "finetune/task4/test/preprocessed/sub_1/ses_1/t2.nii.gz":
        "8042c5869bf8b397acfd8c5886c2918272de4718664fa4a37c657b7bf0448c3e",
    "finetune/task4/train/labels/sub_1/ses_1/seg.nii.gz":
        "9c847223cfbe2ca988fce85349a6009a1ca2624ed45391081890a9b7b1424a25",
    "finetune/task4/train/labels/sub_2/ses_1/seg.nii.gz":
        "b0918f6dca915bc63ad33653cb62c1a72ecbf983c0c76e18de3c2550c00c0f10",
    "finetune/task4/train/labels/sub_3/ses_1/seg.nii.gz":
        "795a4bd570c01bcc847b861413163f0350a476b3d68580fd6336dd93b109df08",
    "finetune/task4/train/participants.tsv":
        "9a3fac8f3ea8be3b3afc0ee5d51b714d8c1bf87d0a32d1e9cfd2def0503b317e",
    "finetune/task4/train/preprocessed/sub_1/ses_1/t2.nii.gz":
        "d01c52da3ccc03614c3350fb00aed6f37d00921492f0a0cbc38190a73b2ad8af",
    "finetune/task4/train/preprocessed/sub_2/ses_1/t2.nii.gz":
        "5a5033effdcfe8cdd8009b54a8c2c3dedc5c927cfc25b579edf8327939b2aef5",
    "finetune/task4/train/preprocessed/sub_3/ses_1/t2.nii.gz":
        "c8fdbb5c3df517ab1cd8c47e98c4941b012f63fcb5fdf432ae95fbc5aada5ebd",
    "finetune/task5/test/labels/sub_1/ses_1/label.txt":
        "9a271f2a916b0b6ee6cecb2426f0b3206ef074578be55d9bc94f6f3fe3ab86aa",
    "finetune/task5/test/participants.tsv":
        "7fcce6db6f228de26ab8dabff573f4b590f040044c9fcb380b14e2d107f03d6c",
    "finetune/task5/test/preprocessed/sub_1/ses_1/t1.nii.gz":
        "bbba208cff12b4da98c8ba5d3f49998be484579dc68df7e3992f247138907c98",
    "finetune/task5/train/labels/sub_1/ses_1/label.txt":
        "9a271f2a916b0b6ee6cecb2426f0b3206ef074578be55d9bc94f6f3fe3ab86aa",
    "finetune/task5/train/labels/sub_2/ses_1/label.txt":
        "4355a46b19d348dc2f57c046f8ef63d4538ebb936000f3c9ee954a27460dd865",
    "finetune/task5/train/labels/sub_3/ses_1/label.txt":
        "4355a46b19d348dc2f57c046f8ef63d4538ebb936000f3c9ee954a27460dd865",
    "finetune/task5/train/participants.tsv":
        "a4abf59d68fd95c83c18c64bfc084fc0bdbdc4a88c6ee56a9324b0e46825a724",
    "finetune/task5/train/preprocessed/sub_1/ses_1/t1.nii.gz":
        "84fd3d6ee13555b828faa3e4f3edf989c01307fe454e5be029aac56f6f53f7a7",
    "finetune/task5/train/preprocessed/sub_2/ses_1/t1.nii.gz":
        "b60b08402994e01d037b6a0195cd7133faff0829c4c9a460937bd12e1c75a8af",
    "finetune/task5/train/preprocessed/sub_3/ses_1/t1.nii.gz":
        "7ba19c952913aefb9e3bf79e0a7799cff036df75981126e75a712fff407ec230",
    "finetune/task6/test/labels/sub_1/ses_1/label.txt":
        "9a271f2a916b0b6ee6cecb2426f0b3206ef074578be55d9bc94f6f3fe3ab86aa",
    "finetune/task6/test/participants.tsv":
        "759daac1ab5bae7b3a74fb94a16f9412c5d2b0adad24dfbcfb6fc12ea8394236",
    "finetune/task6/test/preprocessed/sub_1/ses_1/flair.nii.gz":
        "3bd69b5a66719aecf515efc304634fdca1cdef2b0d5afc6bf6ef200e553874e6",
    "finetune/task6/train/labels/sub_1/ses_1/label.txt":
        "53c234e5e8472b6ac51c1ae1cab3fe06fad053beb8ebfd8977b010655bfdd3c3",
    "finetune/task6/train/labels/sub_2/ses_1/label.txt":
        "9a271f2a916b0b6ee6cecb2426f0b3206ef074578be55d9bc94f6f3fe3ab86aa",
    "finetune/task6/train/labels/sub_3/ses_1/label.txt":
        "4355a46b19d348dc2f57c046f8ef63d4538ebb936000f3c9ee954a27460dd865",
    "finetune/task6/train/participants.tsv":
        "bb3889d7d60695c854a1e7906bfdf21d4874bf43888fdae78e358117d49d6de7",
    "finetune/task6/train/preprocessed/sub_1/ses_1/t1.nii.gz":
        "03c2542da5413bd2300daa5bc299d7d611ca3137b0fe7b42045308cdc947d567",
    "finetune/task6/train/preprocessed/sub_2/ses_1/t1.nii.gz":
        "7bced353a53b69bc52f35ebccb9573116497edabe420d6dab62aa370a58e8b09",
    "finetune/task6/train/preprocessed/sub_3/ses_1/t1.nii.gz":
        "1ba3bc4f132d598b8944a0d520812bb67a3282e5b61d8f184f2d4a0133343265",
    "finetune/task7/test/labels/sub_1/ses_1/label.txt":
        "9a271f2a916b0b6ee6cecb2426f0b3206ef074578be55d9bc94f6f3fe3ab86aa",
    "finetune/task7/test/participants.tsv":
        "833e476577d66348d700066a63148086f2d5921c6530d533fc2f7c8db3ca9a86",
    "finetune/task7/test/preprocessed/sub_1/ses_1/t1.nii.gz":
        "c38af84e1aca5988dd1c45c7f6b00306512c5d901f39ac6c4a6eaeac943a2322",
    "finetune/task7/train/labels/sub_1/ses_1/label.txt":
        "9a271f2a916b0b6ee6cecb2426f0b3206ef074578be55d9bc94f6f3fe3ab86aa",
    "finetune/task7/train/labels/sub_2/ses_1/label.txt":
        "4355a46b19d348dc2f57c046f8ef63d4538ebb936000f3c9ee954a27460dd865",
    "finetune/task7/train/labels/sub_3/ses_1/label.txt":
        "53c234e5e8472b6ac51c1ae1cab3fe06fad053beb8ebfd8977b010655bfdd3c3",
    "finetune/task7/train/participants.tsv":
        "cef029840f7d3cc8d3da7654c750984a7fc3a2261b4a951f9313d0b2697632cc",
    "finetune/task7/train/preprocessed/sub_1/ses_1/t1.nii.gz":
        "11fb2c364e463d8835ed2791717711cde9a6640af0c34d24cdf6b1baae89e04f",
    "finetune/task7/train/preprocessed/sub_2/ses_1/flair.nii.gz":
        "69065832218a28b1e2d04d73b08eef1d47ef60ef82c0b9a42524da2a8a48e4c4",
    "finetune/task7/train/preprocessed/sub_3/ses_1/flair.nii.gz":
        "79578e2c683ac7e504e89027fe4ea7c44729338e2a27bbf449ac04e86be6af12",
    "pretrain/PT001_SynthA/sub-01/ses-01/t1w.nii.gz":
        "4d637fa5c348a64fca940799ba8bf7a9f56bbd9d8e06646b845e737bcaae2d3a",
    "pretrain/PT001_SynthA/sub-01/ses-01/t2w.nii.gz":
        "8427f23c27c593769980dd70ca73d19dbfc1f2a759ec424bf288a849487e2988",
    "pretrain/PT001_SynthA/sub-02/ses-01/adc.nii.gz":
        "3930e69795532f89f1fc86037428748f8ac910edc2675748633970f8e3d44e99",
    "pretrain/PT001_SynthA/sub-02/ses-01/dwi.nii.gz":
        "f590b157b955317469866e5795303fd978d582a743420b3e1cbd3ac68b5cc201",
    "pretrain/PT001_SynthA/sub-02/ses-01/t1w.nii.gz":
        "c500a136b93bf2e2a6174af3c8f130c2bb871c51d6c5ee7ed445ae4bfa77dc9b",
    "pretrain/PT001_SynthA/sub-02/ses-02/t1w.nii.gz":
        "32691580d15c48d4f9aaaa62d9f4014cec883f50dbeca84076004490c2557f11",
    "pretrain/PT001_SynthA/sub-02/ses-02/t2w.nii.gz":
        "ece3e27409b71cd986163fe585d26e75d94650bcd12eb99a5a8490b486aefdf3",
    "pretrain/PT001_SynthA/sub-03/ses-01/flair.nii.gz":
        "02c87ae333450052e79762b52629a8970377f35b97a681529e3465ba62f91ffb",
    "pretrain/PT001_SynthA/sub-03/ses-01/t2w.nii.gz":
        "a4c9c7d7fafd5c93be2578a2b6dbb5c4491ca45012b0387603553fe207e50345",
    "pretrain/PT002_SynthB/sub-01/ses-01/adc.nii.gz":
        "52697711f2931e3eec17deedcdee0507d7d16d1a509f053da9c2a67b20a8d4fc",
    "pretrain/PT002_SynthB/sub-01/ses-01/dwi.nii.gz":
        "a83a85db5f4d83fa17c759bdd6c9db0491b40f6b71f9a1c8d9b5323000202ea6",
    "pretrain/PT002_SynthB/sub-01/ses-01/t1w.nii.gz":
        "fe9fbbb6aa3c436ca0150f2e40e37185fb30746208ded22c81f38da95bf7535b",
    "pretrain/PT002_SynthB/sub-02/ses-01/flair.nii.gz":
        "2aa60ce4125b01f5962050373a4a34d2d04c52fdde2d2a8a7f7d23458b107b07",
    "pretrain/PT002_SynthB/sub-02/ses-01/t1w.nii.gz":
        "b35b6744b5ead7d190a52385c51c32b96982576bf884f7a667db5e3e387c28d5",
    "pretrain/PT002_SynthB/sub-03/ses-01/adc.nii.gz":
        "847eef764bd26eefc7114a7cecec5bf0ff7830342af9d31e571f3aaee426af87",
    "pretrain/PT002_SynthB/sub-03/ses-01/dwi.nii.gz":
        "c29b44e680a44d2826b88531ffc50719e0510bfde9da665c2403392519e59c92",
    "pretrain/PT002_SynthB/sub-03/ses-01/flair.nii.gz":
        "8ce4bf1d9151821c489f28b0207a1d68ab53a81b915937db4829072fecf3911b",
    "pretrain/mri_info.tsv":
        "0b3a66d5f0b1fbe63ef11e5b8a13776a5fd5c20ef70d506d3537f52e27146e5f",
    "pretrain/participants.tsv":
        "64d62c192078c739b6282d36959016b165207e918c5e0ce17b7bc43ef6cf5c95",
    "synth.json":
        "0544904156ea298c5dfa917f4b12fbec8066f0d9147756c29fa8409eaf156d0e",
}


@pytest.mark.slow
def test_golden_output_is_bit_identical(tmp_path: Path):
    got = golden_digests(tmp_path / "golden")
    assert sorted(got) == sorted(EXPECTED), "the set of written files changed"
    changed = [k for k in EXPECTED if got[k] != EXPECTED[k]]
    assert not changed, f"{len(changed)} of {len(EXPECTED)} files changed, e.g. {changed[:5]}"


if __name__ == "__main__":  # print the EXPECTED dict for the current code
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        digests = golden_digests(Path(d))
    sys.stdout.write("EXPECTED: dict[str, str] = {\n")
    for k, v in digests.items():
        sys.stdout.write(f'    "{k}":\n        "{v}",\n')
    sys.stdout.write("}\n")
