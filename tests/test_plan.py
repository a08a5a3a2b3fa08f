import json

import pytest

from thinjax.plan import ARCHS, BlockPlan, Plan, PlanError, StagePlan, plan_from_width


def test_regular_widths_follow_the_study():
    p = plan_from_width("resnet56", 16)
    assert p.stem_width == 16 and p.stage_widths() == [16, 32, 64]
    assert [len(s.blocks) for s in p.stages] == [9, 9, 9] and p.depth == 56
    assert [s.stride for s in p.stages] == [1, 2, 2]
    # projections exactly where stride or width changes
    assert [b.proj for s in p.stages for b in s.blocks[:2]] == [False, False, True, False,
                                                                 True, False]
    r50 = plan_from_width("resnet50", 64)
    assert r50.stage_widths() == [256, 512, 1024, 2048] and r50.depth == 50
    assert [s.blocks[0].inner for s in r50.stages] == [(64, 64), (128, 128), (256, 256),
                                                       (512, 512)]
    assert r50.stages[0].blocks[0].proj  # 64 -> 256 at stride 1
    # the release's ThinResNet-50: inner width int(planes * w / 64)
    t50 = plan_from_width("resnet50", 16)
    assert t50.stage_widths() == [64, 128, 256, 512]
    assert [s.blocks[0].inner[0] for s in t50.stages] == [4, 8, 16, 32]
    lin = plan_from_width("resnet50", 16, base_width=64)
    assert [s.blocks[0].inner[0] for s in lin.stages] == [16, 32, 64, 128]
    assert plan_from_width("resnet18_cifar", 64).stem == "cifar"
    assert plan_from_width("resnet110").depth == 110


def test_json_round_trip_of_an_irregular_plan(tmp_path):
    p = plan_from_width("resnet20", 16)
    stages = list(p.stages)
    stages[0] = StagePlan(16, 1, (BlockPlan((3,), True),) + p.stages[0].blocks[1:])
    stages[1] = StagePlan(27, 2, (BlockPlan((5,), True), BlockPlan((0,)), BlockPlan((31,))))
    q = Plan(p.block, p.stem, 11, tuple(stages), 7)
    assert Plan.from_json(q.to_json()) == q
    q.save(tmp_path / "p.json")
    assert Plan.load(tmp_path / "p.json") == q
    assert json.loads(q.to_json())["stages"][1]["blocks"][1]["inner"] == [0]


def test_irregular_plan_requires_projection_where_width_changes():
    p = plan_from_width("resnet20", 16)
    # stem 11 but stage1 16 with no projection: impossible
    with pytest.raises(PlanError, match=r"stage1/block0: input 11 channels, output 16.*proj"):
        Plan(p.block, p.stem, 11, p.stages, 10)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(block="wide"), "plan.block must be"),
    (lambda d: d["stages"][0].update(stride=3), "stage1: stride must be 1 or 2"),
    (lambda d: d["stages"][1]["blocks"][0].update(inner=[0]), "stage2/block0: inner widths are 0"),
    (lambda d: d["stages"][2]["blocks"][1].update(inner=[3, 3]), "stage3/block1: a basic block"),
    (lambda d: d["stages"][2]["blocks"][1].update(inner=[-1]), "inner widths must be >= 0"),
    (lambda d: d["stages"][0].update(width=0), "stage1: residual width must be >= 1"),
    (lambda d: d["stages"][0].update(blocks=[]), "stage1: a stage needs at least one block"),
    (lambda d: d.pop("stem_width"), "malformed plan dictionary"),
])
def test_invalid_plans_fail_with_a_clear_message(mutate, message):
    d = plan_from_width("resnet20", 16).to_dict()
    mutate(d)
    with pytest.raises(PlanError, match=message):
        Plan.from_dict(d)


def test_partly_zero_bottleneck_is_refused():
    d = plan_from_width("resnet50", 16).to_dict()
    d["stages"][0]["blocks"][1]["inner"] = [0, 4]
    with pytest.raises(PlanError, match="stage1/block1: inner widths \\[0, 4\\] are partly 0"):
        Plan.from_dict(d)


def test_unknown_model_and_impossible_width():
    with pytest.raises(PlanError, match="unknown model 'resnet21'; available: .*resnet20"):
        plan_from_width("resnet21")
    with pytest.raises(PlanError, match="inner width int\\(4 \\* 4 / 64\\) is 0"):
        plan_from_width("resnet50", 4)
    assert set(ARCHS) >= {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                          "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"}
