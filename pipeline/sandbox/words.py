"""The sandbox vocabulary: common lowercase English words, 3 to 7 letters."""

_TEXT = """
able acid aged also apple area army away baby back ball band bank base bath bear beat been beer bell
belt bench best bird bite blow blue boat body bone book boot born boss both bowl bread brick bring
brown build burn bush busy cabin cake calm came camp candy card care cart case cash cast cat cell
chain chair chalk cheap cheek chest chief child chin city clay clean clear cliff clock cloud coal
coat code cold come cook cool copy corn cost crane crew crop crowd crown cup cut daisy dance dark
data date dawn days dead deal dear debt deep deer desk diet dirt dish dock dog done door dose down
draw dream dress drink drive drop drum duck dust duty each eagle earn earth ease east easy edge egg
else even ever exit fable face fact fair fall fancy farm fast fear feast feed feel feet fell felt
fence field file fill film find fine fire firm fish fist five flag flame flat flew floor flow flute
food foot form fort four free frog from frost fruit fuel full fund gain game gate gave ghost giant
gift girl give glad glass goal goat gold golf gone good grab grape grass gray great green grew grid
grow gulf hair half hall hand hard harm hat have head heal hear heart heat held help herb hero hide
high hill hint hold hole home honey hook hope horn horse host hour house huge hunt hurt idea inch
iron item jail jazz jelly join joke juice jump jury just keen keep kept kick kind king kiss kite
knee knew knife knock knot know lack ladder lady laid lake lamp land lane last late laugh lawn lead
leaf lean left lemon lend less life lift light like lime line lion list live load loan lock long
look lord lose lost loud love luck lunch made magic mail main make male mall many map maple mark
mass meal mean meat medal meet melt menu mild milk mind mine miss mode moon more most moth mouse
move much music must nail name navy near neat neck need nest news next nice night nine node none
noon nose note noun oak ocean oil old olive once onion only open orbit oven over pack page paid pain
paint pair palm paper park part party pass past path peak pear pearl pen piano pick pie pile pilot
pine pink pipe plan plant plate play plot plug poem poet pole pond pool poor port post pot pour pull
pump pure push queen quick quiz race radio rain rank rare rate read real rear rent rest rice rich
ride ring rise risk river road robot rock role roll roof room root rope rose rule rush safe sail
salad salt same sand sauce save scale scarf seat seed seek seem self sell send shark sheep shell
ship shirt shoe shop shot show shut sick side sign silk sing sink site size skin skirt slip slow
smile snake snow soap sock soft soil sold sole song soon sort soup space spin spoon spot star stay
stem step stir stop storm such sugar suit sure swim table tail take tale talk tall tank tape task
team tear tell tent term test text than that them then they thin this tide tidy tie tiger time tiny
tire toast told tone tool tooth toss tour tower town toy train tree trip truck true tube tune turn
twin type uncle unit upon used vase vast verb very view vote wage wagon wait wake walk wall want
warm wash water wave weak wear week well went west whale what wheat wheel when whom wide wife wild
will wind wine wing wire wise wish with wolf wood wool word wore work world worm yard year yell yoga
zebra zero zone
"""

WORDS: tuple[str, ...] = tuple(sorted(set(_TEXT.split())))
